"""The only deployment with an HTTP route: the FastAPI app of ``api/application.py``.

Authentication, per-system permission, validation and routing happen in the
app's dependencies and routers; this class only builds the app inside the
replica (Serve's late-bound ingress) and hands it the ``DeploymentHandle``s
of the deployments behind it.
"""

from __future__ import annotations

from ray import serve
from ray.serve.handle import DeploymentHandle

from api.application import create_app
from configs.settings import Settings


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    def __init__(self, ensemble: DeploymentHandle, rag: DeploymentHandle | None, settings: Settings):
        self.ensemble = ensemble
        self.rag = rag
        self.settings = settings

    def __serve_build_asgi_app__(self):
        app = create_app(self.settings, echo_request_id=False)
        app.state.ensemble = self.ensemble
        app.state.rag = self.rag
        return app
