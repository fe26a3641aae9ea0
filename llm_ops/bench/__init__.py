"""`llm-ops bench`: a load generator comparing the stack, the worker and vLLM's own server, interleaved.

`targets` sends and times one streaming request, `stats` turns timings into percentiles and rates,
`vllm_server` starts the reference server with the worker's engine settings, `run` drives the levels
and rounds, `report` checks the issue's targets and writes the JSON, `plot` draws the PNG.
"""
