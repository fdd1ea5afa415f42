"""One behavioural contract suite per port, run against the AWS adapter (on moto) and the local adapter."""
