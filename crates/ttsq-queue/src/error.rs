//! The one error type of every queue operation.

use std::time::Duration;

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The broker could not be reached or closed the connection or channel.
    #[error("RabbitMQ error: {0}")]
    Amqp(#[from] lapin::Error),
    /// No connection has been made yet (the broker is reconnecting).
    #[error("not connected to RabbitMQ")]
    NotConnected,
    /// The broker did not answer a connection attempt in time.
    #[error("RabbitMQ did not answer within {0:?}")]
    ConnectTimeout(Duration),
    /// The broker refused to take responsibility for a message.
    #[error("RabbitMQ did not accept the message: {0}")]
    NotConfirmed(&'static str),
    /// The broker took longer than allowed to confirm.
    #[error("RabbitMQ did not confirm within {0:?}")]
    ConfirmTimeout(Duration),
}
