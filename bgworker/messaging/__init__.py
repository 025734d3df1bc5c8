"""RabbitMQ: connections and confirmed publishing, the topology, the wire format, frames a
foreign producer can send, the producer API and the AsyncAPI document."""
