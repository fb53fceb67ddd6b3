"""The data layer: manifests, fingerprints, partitioners, preprocessing, frozen pretrained
featurizers and their cache, prepared and built-in data sets."""
