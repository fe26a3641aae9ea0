"""The router: every request that reaches a model, FastChat's and OpenAI's alike, to a replica it picks."""
