module github.com/llm-ops/requestid

go 1.22
