"""Configures the official Python `kubernetes` client the way it configures itself in a
pod (InClusterConfigLoader), with the token and CA paths pointed at the test's files
instead of /var/run/secrets. Arguments: HOST PORT TOKEN_FILE CA_FILE."""
import sys

from kubernetes.config.incluster_config import InClusterConfigLoader


def load():
    host, port, token_file, ca_file = sys.argv[1:5]
    InClusterConfigLoader(
        token_filename=token_file,
        cert_filename=ca_file,
        environ={"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port},
    ).load_and_set()
