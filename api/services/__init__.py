"""Services of the ingress app: what routes call besides repositories."""
