"""On-site decisions (/v1/decide) and the JS snippet that shows them."""
