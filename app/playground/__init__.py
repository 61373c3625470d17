"""The browser playground's static files (static/: index.html, playground.css,
playground.js), served by app.api.routes.playground. Only static/ is served, so nothing
else in the package is reachable over HTTP."""
