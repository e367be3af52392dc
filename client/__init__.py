"""The node: a Flower ClientApp that trains on local data, privately."""
