"""Adversarial network simulations: one scenario format, two engines.

- ``scale``: a discrete-event simulation on SimPy for thousands of nodes that runs the real
  record validation (``check_record``), the real peer-scoring rules and the real selection on
  real signed records embedded by the real encoder, over a modelled network;
- ``real``: every node a real process with a real libp2p host on 127.0.0.1.
``zoonode simulate SCENARIO.toml`` writes a results folder (metrics.json, plots, report.md).
"""
