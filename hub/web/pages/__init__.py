"""The web pages, one module per area (auth, workstation, consults, operator), each with an
``APIRouter`` named ``router`` that ``hub.web.routes`` includes."""
