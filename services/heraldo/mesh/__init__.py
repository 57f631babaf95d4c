"""The local mesh: starts and supervises Consul, the control plane, Envoy and the services."""
