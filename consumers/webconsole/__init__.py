"""The web console: what `runwatch notifications list` and `runs show` tell, in a browser.

Served by `runwatch serve` on the ops listener (consumers/service/endpoints.py) under /console/,
off unless `console.enabled`, behind the ops listener's own authentication. Server-rendered
(Jinja2, sandboxed, autoescaped): no build step, and every page reads without JavaScript.
Kept out of the modules it reads from, so that the service runs the same without it.
"""
