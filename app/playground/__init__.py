"""The browser playground's static files (index.html, playground.css, playground.js),
served by app.api.routes.playground."""
