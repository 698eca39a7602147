//! moto's server (`pip install 'moto[server]'`) on loopback: S3, SQS and SNS with
//! S3's real event notifications, for tests of gateways that learn of each other's
//! changes through S3 events. Set up as an operator would on AWS: one SNS topic that
//! the bucket notifies of ObjectCreated/ObjectRemoved, fanned out to one SQS queue
//! per gateway (S3 refuses two queue configurations for the same events).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::types::{Event, NotificationConfiguration, TopicConfiguration};

pub const ACCESS_KEY: &str = "moto-test-ak";
pub const SECRET_KEY: &str = "moto-test-sk";

pub struct Moto {
    /// `http://127.0.0.1:<port>`
    pub endpoint: String,
    addr: std::net::SocketAddr,
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
    child: Child,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    pub async fn start() -> Moto {
        // Self-contained (the bench includes this file too): a port nobody holds now.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &addr.port().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto_server");
        let endpoint = format!("http://{addr}");
        let creds = Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "moto-test");
        let conf = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(creds)
            .endpoint_url(&endpoint)
            .load()
            .await;
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&conf)
                .force_path_style(true)
                .build(),
        );
        let sqs = aws_sdk_sqs::Client::new(&conf);
        let moto = Moto {
            endpoint,
            addr,
            s3,
            sqs,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while moto.s3.list_buckets().send().await.is_err() {
            assert!(Instant::now() < deadline, "moto_server did not answer in 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        moto
    }

    /// Creates `bucket` and one queue per name in `queues`, each subscribed to a
    /// topic the bucket notifies of every object created and removed. Returns the
    /// queue URLs.
    pub async fn bucket_with_queues(&self, bucket: &str, queues: &[&str]) -> Vec<String> {
        self.s3.create_bucket().bucket(bucket).send().await.unwrap();
        let topic = self
            .sns(&[("Action", "CreateTopic"), ("Name", &format!("{bucket}-events"))])
            .await;
        let topic_arn = xml_text(&topic, "TopicArn");
        let mut urls = Vec::new();
        for q in queues {
            let url = self
                .sqs
                .create_queue()
                .queue_name(*q)
                .send()
                .await
                .unwrap()
                .queue_url
                .unwrap();
            let attrs = self
                .sqs
                .get_queue_attributes()
                .queue_url(&url)
                .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                .send()
                .await
                .unwrap();
            let arn = attrs
                .attributes()
                .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
                .unwrap()
                .clone();
            self.sns(&[
                ("Action", "Subscribe"),
                ("TopicArn", &topic_arn),
                ("Protocol", "sqs"),
                ("Endpoint", &arn),
            ])
            .await;
            urls.push(url);
        }
        let config = TopicConfiguration::builder()
            .topic_arn(&topic_arn)
            .events(Event::from("s3:ObjectCreated:*"))
            .events(Event::from("s3:ObjectRemoved:*"))
            .build()
            .unwrap();
        self.s3
            .put_bucket_notification_configuration()
            .bucket(bucket)
            .notification_configuration(
                NotificationConfiguration::builder()
                    .topic_configurations(config)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        urls
    }

    /// One SNS query-API call (the project has no SNS SDK; moto checks no signature).
    async fn sns(&self, params: &[(&str, &str)]) -> String {
        use http_body_util::BodyExt;
        let body: String = params
            .iter()
            .map(|(k, v)| {
                let v = percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC);
                format!("{k}={v}")
            })
            .collect::<Vec<_>>()
            .join("&");
        let stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::post("/")
            .header("host", self.addr.to_string())
            .header("content-type", "application/x-www-form-urlencoded")
            // moto routes a request by the service its credential scope names.
            .header(
                "authorization",
                format!("AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20260101/us-east-1/sns/aws4_request, SignedHeaders=host, Signature=0"),
            )
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let ok = resp.status().is_success();
        let text =
            String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned();
        assert!(ok, "SNS {params:?}: {text}");
        text
    }
}

/// The text of the first `<tag>` in `xml`.
fn xml_text(xml: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let start = xml
        .find(&open)
        .map(|i| i + open.len())
        .unwrap_or_else(|| panic!("no {tag} in {xml}"));
    let end = xml[start..].find('<').unwrap() + start;
    xml[start..end].to_owned()
}
