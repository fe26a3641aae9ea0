module github.com/llm-ops/requestbody

go 1.22
