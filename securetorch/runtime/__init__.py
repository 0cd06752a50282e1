"""Party processes, clusters and the driver side."""
