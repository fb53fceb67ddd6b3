"""The data layer: manifests, fingerprints, partitioners, preprocessing, built-in data sets."""
