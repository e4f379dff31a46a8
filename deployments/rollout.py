"""How Serve replaces replicas when a deployment's code changes.

Serve's default stops an old replica before it starts the replacement. Every HDX
deployment runs with one replica at least, so a new code version would leave
nobody to answer for the seconds a replica takes to import and load its model.
Requests would wait, and a diagnosis whose four models were all restarting at
once went past ``model_call_timeout_s`` and became a 503.

With ``max_surge_percent=100`` Serve starts the replacements first and stops the
old replicas once the new ones are ready, so a rollout costs headroom, not
answers. Headroom means free logical CPUs for the largest replica being replaced
(serve_config.yaml leaves 0.3 of 2 free); a replacement that cannot be placed
waits while the old replica keeps serving.

The LLM deployment is the exception: with vLLM it holds a whole GPU, and a second
copy would never fit, so it is replaced in place; the assistant answers
extractively while it restarts (``RagPipeline``).

A change of ``user_config`` alone (a new model or index version) restarts
nothing: Serve calls ``reconfigure`` on the running replicas.
"""

SURGE_PERCENT = 100
