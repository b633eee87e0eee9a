"""OC20 tasks (S2EF, IS2RE, IS2RS) with fairchem v1 metric definitions, and the oc20-mini generator."""
