"""What both ends of the agent channel share: TLS profile and contexts, certificates, the byte relay."""
