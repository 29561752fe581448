//! The Milvus calls the store needs, made over Milvus's gRPC API.
//!
//! Owns the connection (lazy, reconnecting, with a deadline on every call), the authentication
//! and database headers, and the mapping of a call's outcome to [`RpcError`]: the transport
//! failing or timing out is `Unavailable` (the caller answers 503 and retries later), Milvus
//! refusing a request is `Refused` with its code and reason. The message types come from the
//! official SDK crate (`milvus::proto`, generated from Milvus's own protos); the calls are made
//! here so that each one carries the consistency level and deadline the store's guarantees rely
//! on. Does not own what the collections hold (the parent module).

use std::time::Duration;

use base64::Engine;
use milvus::proto::common::{self, ConsistencyLevel, KeyValuePair, MsgBase, MsgType};
use milvus::proto::milvus as pb;
use milvus::proto::milvus::milvus_service_client::MilvusServiceClient;
use milvus::proto::schema;
use prost013::Message;
use tonic013::metadata::AsciiMetadataValue;
use tonic013::service::interceptor::InterceptedService;
use tonic013::service::Interceptor;
use tonic013::transport::{Channel, Endpoint};

/// Milvus's code for a collection that is not loaded.
const CODE_COLLECTION_NOT_LOADED: i32 = 101;
/// Milvus's code for a collection (or alias) that does not exist.
const CODE_COLLECTION_NOT_FOUND: i32 = 100;
/// Legacy `error_code` for the same, from servers before the numeric codes.
const LEGACY_COLLECTION_NOT_EXISTS: i32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// Milvus could not be reached or did not answer in time: retry later.
    #[error("Milvus is unavailable: {0}")]
    Unavailable(String),
    /// The collection exists but is not loaded (after a Milvus restart, say): load it, retry.
    #[error("Milvus has not loaded collection {0:?}")]
    NotLoaded(String),
    /// The collection or alias named does not exist.
    #[error("Milvus has no collection or alias {0:?}")]
    NotFound(String),
    /// Milvus answered and refused the request.
    #[error("Milvus refused {call}: {reason} (code {code})")]
    Refused {
        call: &'static str,
        code: i32,
        reason: String,
    },
    /// Milvus answered with something this client cannot read.
    #[error("unexpected answer from Milvus to {call}: {why}")]
    Protocol { call: &'static str, why: String },
}

fn from_status(s: tonic013::Status) -> RpcError {
    use tonic013::Code;
    match s.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            RpcError::Unavailable(s.message().to_string())
        }
        _ => RpcError::Unavailable(format!("{:?}: {}", s.code(), s.message())),
    }
}

/// Turns Milvus's in-band status into a result. Reads the deprecated `error_code` too: Milvus
/// 2.3 servers still fill only it for some errors.
#[allow(deprecated)]
fn check(call: &'static str, name: &str, s: Option<common::Status>) -> Result<(), RpcError> {
    let Some(s) = s else { return Ok(()) };
    if s.error_code == 0 && s.code == 0 {
        return Ok(());
    }
    if s.code == CODE_COLLECTION_NOT_LOADED || s.reason.contains("collection not loaded") {
        return Err(RpcError::NotLoaded(name.to_string()));
    }
    if s.code == CODE_COLLECTION_NOT_FOUND
        || s.error_code == LEGACY_COLLECTION_NOT_EXISTS
        || s.reason.contains("collection not found")
        || s.reason.contains("alias not found")
        || s.reason.contains("does not exist")
    {
        return Err(RpcError::NotFound(name.to_string()));
    }
    Err(RpcError::Refused {
        call,
        code: if s.code != 0 { s.code } else { s.error_code },
        reason: s.reason,
    })
}

/// Adds the `authorization` and `dbname` headers Milvus reads on every call.
#[derive(Clone)]
struct Headers {
    auth: Option<AsciiMetadataValue>,
    db: Option<AsciiMetadataValue>,
}

impl Interceptor for Headers {
    fn call(
        &mut self,
        mut req: tonic013::Request<()>,
    ) -> Result<tonic013::Request<()>, tonic013::Status> {
        if let Some(a) = &self.auth {
            req.metadata_mut().insert("authorization", a.clone());
        }
        if let Some(d) = &self.db {
            req.metadata_mut().insert("dbname", d.clone());
        }
        Ok(req)
    }
}

/// Where and how to reach Milvus.
#[derive(Clone, Debug)]
pub struct Target {
    /// `http://host:port`.
    pub endpoint: String,
    /// `user:password` or an API key, sent base64-encoded as Milvus expects.
    pub token: Option<String>,
    pub database: Option<String>,
    /// The deadline of one call.
    pub timeout: Duration,
}

/// One vector field plus the scalar fields of a collection, as rows to write.
pub struct Rows {
    pub ids: Vec<String>,
    pub vectors: Vec<f32>,
    pub dim: usize,
    pub metas: Vec<Vec<u8>>,
    pub added_ms: Vec<i64>,
    pub blobs: Vec<i64>,
}

/// Field names of every collection the store creates.
pub const F_ID: &str = "id";
pub const F_VECTOR: &str = "vector";
pub const F_META: &str = "meta";
pub const F_ADDED: &str = "added_ms";
pub const F_BLOBS: &str = "blobs";

/// One row read back (without its vector unless asked for).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: String,
    pub meta: Vec<u8>,
    pub added_ms: i64,
    pub blobs: i64,
    pub vector: Option<Vec<f32>>,
    /// Inner product with the query, for search results.
    pub score: f32,
}

type Client = MilvusServiceClient<InterceptedService<Channel, Headers>>;

#[derive(Clone)]
pub struct Rpc {
    client: Client,
}

fn kv(k: &str, v: impl ToString) -> KeyValuePair {
    KeyValuePair {
        key: k.to_string(),
        value: v.to_string(),
    }
}

fn base(t: MsgType) -> Option<MsgBase> {
    Some(MsgBase {
        msg_type: t.into(),
        ..Default::default()
    })
}

impl Rpc {
    /// A client that connects on first use and reconnects after failures, so the process starts
    /// (and later recovers) whether or not Milvus is up. Must be called inside a tokio runtime.
    pub fn connect_lazy(t: &Target) -> Result<Rpc, RpcError> {
        let bad = |why: String| RpcError::Protocol {
            call: "connect",
            why,
        };
        let ep = Endpoint::from_shared(t.endpoint.clone())
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(t.timeout)
            .timeout(t.timeout)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let header = |s: String| AsciiMetadataValue::try_from(s).map_err(|e| bad(e.to_string()));
        let headers = Headers {
            auth: t
                .token
                .as_ref()
                .map(|tok| header(base64::engine::general_purpose::STANDARD.encode(tok)))
                .transpose()?,
            db: t.database.clone().map(header).transpose()?,
        };
        let client = MilvusServiceClient::with_interceptor(ep.connect_lazy(), headers)
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20);
        Ok(Rpc { client })
    }

    fn c(&self) -> Client {
        self.client.clone()
    }

    /// Whether Milvus answers; used by readiness.
    pub async fn health(&self) -> Result<(), RpcError> {
        let r = self
            .c()
            .check_health(pb::CheckHealthRequest::default())
            .await
            .map_err(from_status)?
            .into_inner();
        check("CheckHealth", "", r.status)?;
        if !r.is_healthy {
            return Err(RpcError::Unavailable(r.reasons.join("; ")));
        }
        Ok(())
    }

    pub async fn list_collections(&self) -> Result<Vec<String>, RpcError> {
        let r = self
            .c()
            .show_collections(pb::ShowCollectionsRequest {
                base: base(MsgType::ShowCollections),
                ..Default::default()
            })
            .await
            .map_err(from_status)?
            .into_inner();
        check("ShowCollections", "", r.status)?;
        Ok(r.collection_names)
    }

    /// Creates a collection of `dim`-dimensional vectors with the store's fields, described by
    /// `description`.
    pub async fn create_collection(
        &self,
        name: &str,
        description: &str,
        dim: usize,
        max_id_bytes: usize,
    ) -> Result<(), RpcError> {
        let field =
            |name: &str, dt: schema::DataType, params: Vec<KeyValuePair>| schema::FieldSchema {
                name: name.to_string(),
                data_type: dt.into(),
                type_params: params,
                ..Default::default()
            };
        let mut id = field(
            F_ID,
            schema::DataType::VarChar,
            vec![kv("max_length", max_id_bytes)],
        );
        id.is_primary_key = true;
        let sch = schema::CollectionSchema {
            name: name.to_string(),
            description: description.to_string(),
            fields: vec![
                id,
                field(
                    F_VECTOR,
                    schema::DataType::FloatVector,
                    vec![kv("dim", dim)],
                ),
                field(F_META, schema::DataType::Json, vec![]),
                field(F_ADDED, schema::DataType::Int64, vec![]),
                field(F_BLOBS, schema::DataType::Int64, vec![]),
            ],
            ..Default::default()
        };
        let r = self
            .c()
            .create_collection(pb::CreateCollectionRequest {
                base: base(MsgType::CreateCollection),
                collection_name: name.to_string(),
                schema: sch.encode_to_vec(),
                shards_num: 1,
                consistency_level: ConsistencyLevel::Strong.into(),
                ..Default::default()
            })
            .await
            .map_err(from_status)?
            .into_inner();
        check("CreateCollection", name, Some(r))
    }

    /// The collection's description and its real name (when `name` is an alias).
    pub async fn describe_collection(&self, name: &str) -> Result<(String, String), RpcError> {
        let r = self
            .c()
            .describe_collection(pb::DescribeCollectionRequest {
                base: base(MsgType::DescribeCollection),
                collection_name: name.to_string(),
                ..Default::default()
            })
            .await
            .map_err(from_status)?
            .into_inner();
        check("DescribeCollection", name, r.status)?;
        let description = r.schema.map(|s| s.description).unwrap_or_default();
        Ok((r.collection_name, description))
    }

    pub async fn drop_collection(&self, name: &str) -> Result<(), RpcError> {
        let r = self
            .c()
            .drop_collection(pb::DropCollectionRequest {
                base: base(MsgType::DropCollection),
                collection_name: name.to_string(),
                ..Default::default()
            })
            .await
            .map_err(from_status)?
            .into_inner();
        match check("DropCollection", name, Some(r)) {
            Err(RpcError::NotFound(_)) => Ok(()),
            other => other,
        }
    }

    /// An HNSW index on the vector field, inner product metric.
    pub async fn create_hnsw(
        &self,
        name: &str,
        m: usize,
        ef_construction: usize,
    ) -> Result<(), RpcError> {
        let params = serde_json::json!({"M": m, "efConstruction": ef_construction}).to_string();
        let r = self
            .c()
            .create_index(pb::CreateIndexRequest {
                base: base(MsgType::CreateIndex),
                collection_name: name.to_string(),
                field_name: F_VECTOR.to_string(),
                extra_params: vec![
                    kv("index_type", "HNSW"),
                    kv("metric_type", "IP"),
                    kv("params", params),
                ],
                index_name: "vector_hnsw".to_string(),
                ..Default::default()
            })
            .await
            .map_err(from_status)?
            .into_inner();
        check("CreateIndex", name, Some(r))
    }

    pub async fn load(&self, name: &str) -> Result<(), RpcError> {
        let r = self
            .c()
            .load_collection(pb::LoadCollectionRequest {
                base: base(MsgType::LoadCollection),
                collection_name: name.to_string(),
                replica_number: 1,
                ..Default::default()
            })
            .await
            .map_err(from_status)?
            .into_inner();
        check("LoadCollection", name, Some(r))
    }

    /// Percent loaded (100 = searchable).
    pub async fn loading_progress(&self, name: &str) -> Result<i64, RpcError> {
        let r = self
            .c()
            .get_loading_progress(pb::GetLoadingProgressRequest {
                base: base(MsgType::LoadCollection),
                collection_name: name.to_string(),
                ..Default::default()
            })
            .await
            .map_err(from_status)?
            .into_inner();
        check("GetLoadingProgress", name, r.status)?;
        Ok(r.progress)
    }

    /// Inserts or replaces rows by id in one request.
    pub async fn upsert(&self, name: &str, rows: Rows) -> Result<(), RpcError> {
        let n = rows.ids.len();
        let scalar = |name: &str, dt: schema::DataType, data: schema::scalar_field::Data| {
            schema::FieldData {
                r#type: dt.into(),
                field_name: name.to_string(),
                field: Some(schema::field_data::Field::Scalars(schema::ScalarField {
                    data: Some(data),
                    ..Default::default()
                })),
                ..Default::default()
            }
        };
        use schema::scalar_field::Data as S;
        let fields = vec![
            scalar(
                F_ID,
                schema::DataType::VarChar,
                S::StringData(schema::StringArray { data: rows.ids }),
            ),
            schema::FieldData {
                r#type: schema::DataType::FloatVector.into(),
                field_name: F_VECTOR.to_string(),
                field: Some(schema::field_data::Field::Vectors(schema::VectorField {
                    dim: rows.dim as i64,
                    data: Some(schema::vector_field::Data::FloatVector(
                        schema::FloatArray { data: rows.vectors },
                    )),
                    ..Default::default()
                })),
                ..Default::default()
            },
            scalar(
                F_META,
                schema::DataType::Json,
                S::JsonData(schema::JsonArray { data: rows.metas }),
            ),
            scalar(
                F_ADDED,
                schema::DataType::Int64,
                S::LongData(schema::LongArray {
                    data: rows.added_ms,
                }),
            ),
            scalar(
                F_BLOBS,
                schema::DataType::Int64,
                S::LongData(schema::LongArray { data: rows.blobs }),
            ),
        ];
        let r = self
            .c()
            .upsert(pb::UpsertRequest {
                base: base(MsgType::Upsert),
                collection_name: name.to_string(),
                fields_data: fields,
                num_rows: n as u32,
                ..Default::default()
            })
            .await
            .map_err(from_status)?
            .into_inner();
        check("Upsert", name, r.status)?;
        Ok(())
    }

    /// Deletes the rows `expr` selects.
    pub async fn delete(&self, name: &str, expr: &str) -> Result<(), RpcError> {
        let r = self
            .c()
            .delete(pb::DeleteRequest {
                base: base(MsgType::Delete),
                collection_name: name.to_string(),
                expr: expr.to_string(),
                ..Default::default()
            })
            .await
            .map_err(from_status)?
            .into_inner();
        check("Delete", name, r.status)
    }

    /// Rows `expr` selects (at most `limit`, in primary-key order when a limit is given).
    pub async fn query(
        &self,
        name: &str,
        expr: &str,
        with_vector: bool,
        limit: Option<usize>,
        level: ConsistencyLevel,
    ) -> Result<Vec<Row>, RpcError> {
        let mut out = vec![F_ID.into(), F_META.into(), F_ADDED.into(), F_BLOBS.into()];
        if with_vector {
            out.push(F_VECTOR.to_string());
        }
        let mut params = vec![];
        if let Some(l) = limit {
            params.push(kv("limit", l));
        }
        let r = self
            .c()
            .query(pb::QueryRequest {
                base: base(MsgType::Retrieve),
                collection_name: name.to_string(),
                expr: expr.to_string(),
                output_fields: out,
                query_params: params,
                consistency_level: level.into(),
                ..Default::default()
            })
            .await
            .map_err(from_status)?
            .into_inner();
        check("Query", name, r.status)?;
        let n = r
            .fields_data
            .iter()
            .find(|f| f.field_name == F_ID)
            .map(|f| strings(f).len())
            .unwrap_or(0);
        rows_from(&r.fields_data, n, &[], "Query")
    }

    /// Number of rows.
    pub async fn count(&self, name: &str, level: ConsistencyLevel) -> Result<u64, RpcError> {
        self.count_where(name, "", level).await
    }

    /// `count(*)` of the rows passing the boolean expression `expr` ("" for all of them).
    pub async fn count_where(
        &self,
        name: &str,
        expr: &str,
        level: ConsistencyLevel,
    ) -> Result<u64, RpcError> {
        let r = self
            .c()
            .query(pb::QueryRequest {
                base: base(MsgType::Retrieve),
                collection_name: name.to_string(),
                expr: expr.to_string(),
                output_fields: vec!["count(*)".to_string()],
                consistency_level: level.into(),
                ..Default::default()
            })
            .await
            .map_err(from_status)?
            .into_inner();
        check("Query count(*)", name, r.status)?;
        r.fields_data
            .iter()
            .find_map(|f| match &f.field {
                Some(schema::field_data::Field::Scalars(schema::ScalarField {
                    data: Some(schema::scalar_field::Data::LongData(l)),
                    ..
                })) => l.data.first().copied(),
                _ => None,
            })
            .map(|c| c as u64)
            .ok_or(RpcError::Protocol {
                call: "Query count(*)",
                why: "no count in the answer".into(),
            })
    }

    /// The `k` rows of highest inner product with `query` that `expr` selects.
    pub async fn search(
        &self,
        name: &str,
        query: &[f32],
        k: usize,
        ef: usize,
        expr: &str,
        level: ConsistencyLevel,
    ) -> Result<Vec<Row>, RpcError> {
        let bytes: Vec<u8> = query.iter().flat_map(|x| x.to_le_bytes()).collect();
        let group = common::PlaceholderGroup {
            placeholders: vec![common::PlaceholderValue {
                tag: "$0".to_string(),
                r#type: common::PlaceholderType::FloatVector.into(),
                values: vec![bytes],
                ..Default::default()
            }],
        };
        let params = serde_json::json!({ "ef": ef.max(k) }).to_string();
        let r = self
            .c()
            .search(pb::SearchRequest {
                base: base(MsgType::Search),
                collection_name: name.to_string(),
                dsl: expr.to_string(),
                dsl_type: common::DslType::BoolExprV1.into(),
                output_fields: vec![F_META.into(), F_ADDED.into(), F_BLOBS.into()],
                search_params: vec![
                    kv("anns_field", F_VECTOR),
                    kv("topk", k),
                    kv("metric_type", "IP"),
                    kv("params", params),
                    kv("round_decimal", -1),
                ],
                nq: 1,
                consistency_level: level.into(),
                search_input: Some(pb::search_request::SearchInput::PlaceholderGroup(
                    group.encode_to_vec(),
                )),
                ..Default::default()
            })
            .await
            .map_err(from_status)?
            .into_inner();
        check("Search", name, r.status)?;
        let Some(res) = r.results else {
            return Ok(vec![]);
        };
        let ids = match res.ids.and_then(|i| i.id_field) {
            Some(schema::i_ds::IdField::StrId(s)) => s.data,
            None => vec![],
            Some(_) => {
                return Err(RpcError::Protocol {
                    call: "Search",
                    why: "ids are not strings".into(),
                })
            }
        };
        let mut rows = rows_from(&res.fields_data, ids.len(), &ids, "Search")?;
        for (row, s) in rows.iter_mut().zip(res.scores) {
            row.score = s;
        }
        Ok(rows)
    }

    /// Seals what was written so far (Milvus indexes sealed segments).
    pub async fn flush(&self, name: &str) -> Result<(), RpcError> {
        let r = self
            .c()
            .flush(pb::FlushRequest {
                base: base(MsgType::Flush),
                collection_names: vec![name.to_string()],
                ..Default::default()
            })
            .await
            .map_err(from_status)?
            .into_inner();
        check("Flush", name, r.status)
    }

    /// `(indexed rows, total rows)` of the vector index.
    pub async fn index_progress(&self, name: &str) -> Result<(i64, i64), RpcError> {
        let r = self
            .c()
            .describe_index(pb::DescribeIndexRequest {
                base: base(MsgType::DescribeIndex),
                collection_name: name.to_string(),
                field_name: F_VECTOR.to_string(),
                ..Default::default()
            })
            .await
            .map_err(from_status)?
            .into_inner();
        check("DescribeIndex", name, r.status)?;
        let d = r.index_descriptions.first().ok_or(RpcError::Protocol {
            call: "DescribeIndex",
            why: "no index".into(),
        })?;
        Ok((d.indexed_rows, d.total_rows))
    }

    /// Points `alias` at `collection`, creating the alias if needed.
    pub async fn set_alias(&self, alias: &str, collection: &str) -> Result<(), RpcError> {
        let r = self
            .c()
            .alter_alias(pb::AlterAliasRequest {
                base: base(MsgType::AlterAlias),
                collection_name: collection.to_string(),
                alias: alias.to_string(),
                ..Default::default()
            })
            .await
            .map_err(from_status)?
            .into_inner();
        match check("AlterAlias", alias, Some(r)) {
            Ok(()) => Ok(()),
            Err(RpcError::NotFound(_)) | Err(RpcError::Refused { .. }) => {
                let r = self
                    .c()
                    .create_alias(pb::CreateAliasRequest {
                        base: base(MsgType::CreateAlias),
                        collection_name: collection.to_string(),
                        alias: alias.to_string(),
                        ..Default::default()
                    })
                    .await
                    .map_err(from_status)?
                    .into_inner();
                check("CreateAlias", alias, Some(r))
            }
            Err(e) => Err(e),
        }
    }

    /// The collection `alias` names, or None.
    pub async fn resolve_alias(&self, alias: &str) -> Result<Option<String>, RpcError> {
        let r = self
            .c()
            .describe_alias(pb::DescribeAliasRequest {
                base: base(MsgType::DescribeAlias),
                alias: alias.to_string(),
                ..Default::default()
            })
            .await
            .map_err(from_status)?
            .into_inner();
        match check("DescribeAlias", alias, r.status) {
            Ok(()) if r.collection.is_empty() => Ok(None),
            Ok(()) => Ok(Some(r.collection)),
            Err(RpcError::NotFound(_)) => Ok(None),
            Err(RpcError::Refused { reason, .. }) if reason.contains("alias") => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn strings(f: &schema::FieldData) -> &[String] {
    match &f.field {
        Some(schema::field_data::Field::Scalars(schema::ScalarField {
            data: Some(schema::scalar_field::Data::StringData(s)),
            ..
        })) => &s.data,
        _ => &[],
    }
}

fn rows_from(
    fields: &[schema::FieldData],
    n: usize,
    ids: &[String],
    call: &'static str,
) -> Result<Vec<Row>, RpcError> {
    let bad = |why: &str| RpcError::Protocol {
        call,
        why: why.to_string(),
    };
    let mut rows: Vec<Row> = (0..n)
        .map(|i| Row {
            id: ids.get(i).cloned().unwrap_or_default(),
            meta: vec![],
            added_ms: 0,
            blobs: 0,
            vector: None,
            score: 0.0,
        })
        .collect();
    use schema::field_data::Field;
    use schema::scalar_field::Data as S;
    for f in fields {
        match (&f.field_name[..], &f.field) {
            (F_ID, _) => {
                let s = strings(f);
                if s.len() != n {
                    return Err(bad("id column length"));
                }
                for (r, id) in rows.iter_mut().zip(s) {
                    r.id = id.clone();
                }
            }
            (
                F_META,
                Some(Field::Scalars(schema::ScalarField {
                    data: Some(S::JsonData(j)),
                    ..
                })),
            ) => {
                if j.data.len() != n {
                    return Err(bad("meta column length"));
                }
                for (r, m) in rows.iter_mut().zip(&j.data) {
                    r.meta = m.clone();
                }
            }
            (
                F_ADDED,
                Some(Field::Scalars(schema::ScalarField {
                    data: Some(S::LongData(l)),
                    ..
                })),
            ) => {
                if l.data.len() != n {
                    return Err(bad("added_ms column length"));
                }
                for (r, v) in rows.iter_mut().zip(&l.data) {
                    r.added_ms = *v;
                }
            }
            (
                F_BLOBS,
                Some(Field::Scalars(schema::ScalarField {
                    data: Some(S::LongData(l)),
                    ..
                })),
            ) => {
                if l.data.len() != n {
                    return Err(bad("blobs column length"));
                }
                for (r, v) in rows.iter_mut().zip(&l.data) {
                    r.blobs = *v;
                }
            }
            (F_VECTOR, Some(Field::Vectors(v))) => {
                let dim = v.dim as usize;
                let Some(schema::vector_field::Data::FloatVector(fa)) = &v.data else {
                    return Err(bad("vector column type"));
                };
                if dim == 0 || fa.data.len() != n * dim {
                    return Err(bad("vector column length"));
                }
                for (r, c) in rows.iter_mut().zip(fa.data.chunks(dim)) {
                    r.vector = Some(c.to_vec());
                }
            }
            _ => {}
        }
    }
    Ok(rows)
}

/// `s` as a string literal of Milvus's boolean expressions: double-quoted, with `\` and `"`
/// escaped and control characters written as escapes, so any id selects exactly itself.
pub fn string_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
