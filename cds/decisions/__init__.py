"""What the service keeps of its decisions: the memory feedback is checked against (local
or shared through Redis), and the durable, pseudonymised decision log."""
