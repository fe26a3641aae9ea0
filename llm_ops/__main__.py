from llm_ops.cli import main

# vLLM spawns processes that re-import the main module: keep the guard.
if __name__ == "__main__":
    main()
