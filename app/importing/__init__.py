"""`models import`: a model trained elsewhere, compiled to ONNX, checked for parity, published.

sources (read it with its own library) -> schema (its input columns, task and classes) -> compile
(one ONNX graph in this service's layout) -> parity (the graph against the library, on real rows)
-> importer (model.json, the drift profile, the promotion gate, the model store, --serve).
Operator code: it imports the model libraries, so it never runs in the serving process (POST
/models/import runs it as a subprocess).
"""
