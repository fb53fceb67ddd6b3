"""The wire contract between coordinator and sites: typed messages and their validation."""
