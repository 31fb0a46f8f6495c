"""What tests and benchmarks both run but neither ships: the Kubernetes API emulator (``kube_emulator``, with
field ownership in ``field_ownership`` and the API server's CRD-default checks in ``crd_defaults``) and the
real operator as a subprocess (``operator_process``). ``tests/`` and ``bench/`` import it; it imports neither.
"""
