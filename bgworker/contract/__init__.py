"""The event contract: what producers publish and bgworker announces, its field rules, the
names of states and reasons, and the texts a requester is shown. Nothing in bgworker is below it."""
