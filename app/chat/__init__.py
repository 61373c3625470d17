"""The one chat path every protocol uses: chat template rendering (tools, tool results,
reasoning switches), tool-call parsers and reasoning parsers per model family (registry
dicts in registry.py), all incremental so a stream and a whole answer parse the same
(parsing.py states the contract). Results are protocol-neutral (types.py); the OpenAI route
and later protocols translate them."""
