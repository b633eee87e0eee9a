"""The symmetry and physics audit task, built on the conformance kit in mlip_zoo.zoo.conformance."""
