//! S3 event notification messages, as they arrive in an SQS queue: S3's own JSON
//! (`Records`), the same wrapped in an SNS notification (a topic fanned out to one
//! queue per gateway), and S3's `s3:TestEvent`. MinIO and Ceph RGW send the same
//! records with `s3:`-prefixed event names.

use serde::Deserialize;

use crate::share::KeyEvent;

/// One record of a message: what happened to which key of which bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Event {
    pub bucket: String,
    /// The object key, decoded (events carry it form-URL-encoded).
    pub key: String,
    pub event: KeyEvent,
}

#[derive(Deserialize)]
struct Body {
    #[serde(rename = "Records", default)]
    records: Option<Vec<Record>>,
    /// SNS: the S3 message as a JSON string.
    #[serde(rename = "Type", default)]
    sns_type: Option<String>,
    #[serde(rename = "Message", default)]
    sns_message: Option<String>,
    /// `s3:TestEvent`, sent when a notification configuration is saved.
    #[serde(rename = "Event", default)]
    event: Option<String>,
}

#[derive(Deserialize)]
struct Record {
    #[serde(rename = "eventName")]
    event_name: String,
    s3: RecordS3,
}

#[derive(Deserialize)]
struct RecordS3 {
    bucket: RecordBucket,
    object: RecordObject,
}

#[derive(Deserialize)]
struct RecordBucket {
    name: String,
}

#[derive(Deserialize)]
struct RecordObject {
    key: String,
    #[serde(rename = "eTag", default)]
    etag: Option<String>,
}

/// The events of one message body. A message that is not an S3 notification is an
/// error (the caller logs it and drops the message); records of other kinds
/// (restores, tagging, replication) are left out.
pub fn parse(body: &str) -> Result<Vec<S3Event>, String> {
    let b: Body = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    if b.sns_type.as_deref() == Some("Notification")
        && let Some(inner) = &b.sns_message
    {
        return parse(inner);
    }
    if b.event.as_deref() == Some("s3:TestEvent") {
        return Ok(Vec::new());
    }
    let Some(records) = b.records else {
        return Err("no Records: not an S3 event notification".into());
    };
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let name = r.event_name.strip_prefix("s3:").unwrap_or(&r.event_name);
        let event = if name.starts_with("ObjectCreated:") {
            KeyEvent::Created {
                etag: r.s3.object.etag.unwrap_or_default(),
            }
        } else if name.starts_with("ObjectRemoved:") || name.starts_with("LifecycleExpiration:") {
            KeyEvent::Removed
        } else {
            continue;
        };
        out.push(S3Event {
            bucket: r.s3.bucket.name,
            key: decode_key(&r.s3.object.key)?,
            event,
        });
    }
    Ok(out)
}

/// Keys in S3 events are form-URL-encoded: `+` is a space, `%2B` a plus.
fn decode_key(raw: &str) -> Result<String, String> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|k| k.into_owned())
        .map_err(|_| format!("key {raw:?} does not decode to UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, key: &str) -> String {
        format!(
            r#"{{"eventVersion":"2.1","eventSource":"aws:s3","eventName":"{name}",
            "s3":{{"bucket":{{"name":"bkt"}},"object":{{"key":"{key}","size":2,
            "eTag":"49f68a5c","sequencer":"0055AED6DCD90281E5"}}}}}}"#
        )
    }

    #[test]
    fn s3_records_decode_their_keys() {
        let body = format!(
            r#"{{"Records":[{},{},{}]}}"#,
            record("ObjectCreated:Put", "a+dir%2Fx%2By%25z.txt"),
            record("ObjectRemoved:DeleteMarkerCreated", "caf%C3%A9"),
            record("ObjectRestore:Completed", "x")
        );
        let events = parse(&body).unwrap();
        assert_eq!(
            events,
            [
                S3Event {
                    bucket: "bkt".into(),
                    key: "a dir/x+y%z.txt".into(),
                    event: KeyEvent::Created {
                        etag: "49f68a5c".into()
                    },
                },
                S3Event {
                    bucket: "bkt".into(),
                    key: "café".into(),
                    event: KeyEvent::Removed,
                },
            ]
        );
    }

    #[test]
    fn sns_envelopes_minio_names_and_test_events() {
        let inner = format!(r#"{{"Records":[{}]}}"#, record("s3:ObjectCreated:Copy", "k"));
        let sns = serde_json::json!({"Type": "Notification", "Message": inner}).to_string();
        let events = parse(&sns).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].key, "k");
        let test = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"bkt"}"#;
        assert_eq!(parse(test).unwrap(), []);
    }

    #[test]
    fn other_messages_are_errors_not_panics() {
        for body in [
            "",
            "null",
            "[]",
            "{}",
            "not json",
            r#"{"Records":[{"eventName":1}]}"#,
        ] {
            assert!(parse(body).is_err(), "{body:?}");
        }
        let bad_utf8 = format!(r#"{{"Records":[{}]}}"#, record("ObjectCreated:Put", "%FF"));
        assert!(parse(&bad_utf8).is_err());
    }
}
