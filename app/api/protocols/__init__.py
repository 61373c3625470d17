"""One module per foreign API: each translates its requests into the one internal chat
request (app/chat) and the parsed outputs back into its own shapes; no model logic."""
