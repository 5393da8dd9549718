"""The Node: its resources from a description, their live state, the registration client and the Node service."""
