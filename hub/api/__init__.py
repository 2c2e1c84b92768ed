"""HTTP adapters: FastAPI routers that translate HTTP to the service layer and back."""
