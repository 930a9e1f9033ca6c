"""The product-catalogue example: see README.md beside this file."""
