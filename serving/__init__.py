"""The gRPC server: thin servicers over a domain layer that answers from the feature store.

Layers, top to bottom: `server` (process, ports, health, reflection, workers, signals) ->
`servicer` (validate, call one domain function, map to the wire and map errors in one place) ->
`domain` (answers: candidates from the store, filters and top-ups through `recsvc.ranking`,
real-time re-scoring, fallbacks) -> `recsvc.store`.

Must not import `training`: the trainer and the server share only `recsvc` (the bundle and the
store are the contract). Protobuf types never go below `servicer` / `validation`.
"""
