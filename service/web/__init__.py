"""See a sweep in a browser: one set of server-rendered pages, two ways to get them.

- `report.write_report(store, sweep, out_dir)` writes them as a static site (`bnsweep report`,
  and `bnsweep launch --report DIR`): no server, no open port, readable from a login node.
- `app.create_app(url)` serves the same pages live (`bnsweep dashboard`), with a JSON API and
  the running sweeps' progress refreshed in place.

`view` reads the store (read-only, through `bnsweep.store.api`) into frozen view values and
caches them under the store's fingerprint; `pages` turns them into HTML in the frame of
`frame`, with links from a `Site` (file names for the static site, routes for the server);
`figures` draws the SVGs.
Nothing here needs Ray; only `app` needs the `dashboard` extra (FastAPI, uvicorn).
"""
