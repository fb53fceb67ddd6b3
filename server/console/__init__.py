"""The operator console: a read-only web page over a run store or a simulation run folder.

``views`` holds the typed view models, ``store_source`` and ``folder_source`` fill them from a
run store (SQLite or PostgreSQL, with the server folder's registered sites and certificates) or
from a run folder's files, ``charts`` draws their plots as inline SVG, ``security`` decides
who may see the page, ``app`` serves it (FastAPI, Jinja2) and ``cli`` starts it (uvicorn).
Nothing here can start, stop or change a run.
"""
