//! A TCP link between the stack and one of its services that a test can cut
//! and restore: a network outage of Postgres, RabbitMQ or S3 for this test's
//! processes only, while every other test keeps using the same servers.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// A loopback proxy to one upstream server.
pub struct FaultyLink {
    /// Where clients connect instead of the upstream.
    pub address: SocketAddr,
    up: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl FaultyLink {
    /// Starts forwarding a fresh loopback port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (up, _) = watch::channel(true);
        let links = up.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                // Down: the connection is closed at once, as by a host that
                // is unreachable or restarting.
                if !*links.borrow() {
                    drop(client);
                    continue;
                }
                let mut state = links.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        // A cut drops both ends of every open connection.
                        _ = state.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Ok(Self { address, up, task })
    }

    /// Drops every open connection and refuses new ones until [`Self::restore`].
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }

    /// Cuts the link for `duration`, then restores it.
    pub async fn outage(&self, duration: Duration) {
        self.cut();
        tokio::time::sleep(duration).await;
        self.restore();
    }
}

impl Drop for FaultyLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The three links of a stack started with
/// [`TestOptions::faulty_links`](crate::TestOptions::faulty_links).
pub struct Links {
    /// To Postgres.
    pub postgres: FaultyLink,
    /// To RabbitMQ.
    pub rabbitmq: FaultyLink,
    /// To the S3 server.
    pub s3: FaultyLink,
}

impl Links {
    /// Starts a link to each service named in `env` (the stack's
    /// `TTSQ_DATABASE_URL`, `TTSQ_QUEUE_URL`, `TTSQ_S3_ENDPOINT`) and points
    /// those variables at the links instead.
    pub(crate) async fn interpose(env: &mut [(String, String)]) -> anyhow::Result<Self> {
        let postgres = link_for(env, "TTSQ_DATABASE_URL").await?;
        let rabbitmq = link_for(env, "TTSQ_QUEUE_URL").await?;
        let s3 = link_for(env, "TTSQ_S3_ENDPOINT").await?;
        Ok(Self {
            postgres,
            rabbitmq,
            s3,
        })
    }
}

/// A link to the service at `var`'s URL; `var` then points at the link.
async fn link_for(env: &mut [(String, String)], var: &str) -> anyhow::Result<FaultyLink> {
    let (_, url) = env
        .iter_mut()
        .rev()
        .find(|(k, _)| k == var)
        .ok_or_else(|| anyhow::anyhow!("{var} is not set"))?;
    let link = FaultyLink::start(upstream_of(url)?).await?;
    *url = reroute(url, link.address)?;
    Ok(link)
}

fn upstream_of(url: &str) -> anyhow::Result<SocketAddr> {
    use anyhow::Context;
    let parsed = reqwest::Url::parse(url).with_context(|| format!("cannot parse {url}"))?;
    parsed
        .socket_addrs(|| match parsed.scheme() {
            "postgres" | "postgresql" => Some(5432),
            "amqp" => Some(5672),
            _ => None,
        })
        .with_context(|| format!("{url} names no reachable address"))?
        .into_iter()
        .next()
        .with_context(|| format!("{url} resolves to nothing"))
}

/// `url` with its host and port replaced by `address`.
fn reroute(url: &str, address: SocketAddr) -> anyhow::Result<String> {
    use anyhow::Context;
    let mut parsed = reqwest::Url::parse(url).with_context(|| format!("cannot parse {url}"))?;
    parsed
        .set_ip_host(address.ip())
        .map_err(|()| anyhow::anyhow!("cannot set the host of {url}"))?;
    parsed
        .set_port(Some(address.port()))
        .map_err(|()| anyhow::anyhow!("cannot set the port of {url}"))?;
    Ok(parsed.to_string())
}
