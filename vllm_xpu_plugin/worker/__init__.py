"""The plugin's Worker and its narrow GPUModelRunner subclass."""
