"""Secure models: the families (declarative, by HF class name), the party-side model service
(build, forward, generation) and the share-file format."""
