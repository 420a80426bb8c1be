"""The native 7680-d encoder, its canonical space and the BitDelta codec (``zoonode.native``)."""
