"""The portable file one tenant is exported to: typed values and the archive around them."""
