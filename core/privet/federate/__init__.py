"""Federated training: ``privet federate federation.yaml``.

A coordinator (:mod:`.coordinator`) runs rounds over clients, each a separate process
(:mod:`.client`) that trains its own pipeline on its own data through the normal engine
and returns only weights and its example count; :mod:`.aggregate` averages them
(FedAvg, FedProx) and :mod:`.config` reads the federation file.
"""
