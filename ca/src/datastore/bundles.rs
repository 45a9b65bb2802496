//! Trust bundles, the CA's own and federated ones, stored as SPIFFE bundle (JWKS) text with
//! their sequence number. Setting and deleting are audited.

use serde_json::json;
use warden_identity::{Bundle, TrustDomain};

use super::error::DatastoreError;
use super::{Datastore, now_unix};

type BundleRow = (String, String);

// === impl Datastore ===

impl Datastore {
    /// Stores (or replaces) the bundle of `b.trust_domain()`, auditing `bundle.set`.
    pub async fn set_bundle(&self, b: &Bundle, actor: &str) -> Result<(), DatastoreError> {
        let td = b.trust_domain().to_string();
        let jwks = b.to_jwks();
        let sequence = i64::try_from(b.sequence()).map_err(|_| {
            DatastoreError::Invalid(format!("bundle sequence `{}` is too large", b.sequence()))
        })?;
        in_tx!(self, |tx, audit| {
            sqlx::query(
                "INSERT INTO bundles (trust_domain, jwks, sequence, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (trust_domain) DO UPDATE SET jwks = excluded.jwks, sequence = excluded.sequence, \
                 updated_at = excluded.updated_at",
            )
            .bind(td.clone())
            .bind(jwks)
            .bind(sequence)
            .bind(now_unix())
            .execute(&mut *tx)
            .await?;
            audit.record("bundle.set", actor, &td, json!({
                "sequence": b.sequence(),
                "x509_authorities": b.x509_authorities().len(),
                "jwt_authorities": b.jwt_authorities().iter().map(|k| k.kid().to_owned()).collect::<Vec<_>>(),
            }))?;
        });
        tracing::info!(trust_domain = %td, sequence = b.sequence(), "bundle stored");
        Ok(())
    }

    /// The stored bundle of `td`, if any.
    pub async fn get_bundle(&self, td: &TrustDomain) -> Result<Option<Bundle>, DatastoreError> {
        let row: Option<BundleRow> = on_pool!(self, pool => {
            sqlx::query_as("SELECT trust_domain, jwks FROM bundles WHERE trust_domain = $1")
                .bind(td.to_string())
                .fetch_optional(pool)
                .await?
        });
        row.map(from_row).transpose()
    }

    /// Every stored bundle, ordered by trust domain.
    pub async fn list_bundles(&self) -> Result<Vec<Bundle>, DatastoreError> {
        let rows: Vec<BundleRow> = on_pool!(self, pool => {
            sqlx::query_as("SELECT trust_domain, jwks FROM bundles ORDER BY trust_domain").fetch_all(pool).await?
        });
        rows.into_iter().map(from_row).collect()
    }

    /// Deletes the bundle of `td`, auditing `bundle.deleted`.
    pub async fn delete_bundle(&self, td: &TrustDomain, actor: &str) -> Result<(), DatastoreError> {
        let name = td.to_string();
        in_tx!(self, |tx, audit| {
            let done = sqlx::query("DELETE FROM bundles WHERE trust_domain = $1")
                .bind(name.clone())
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() != 1 {
                return Err(DatastoreError::NotFound {
                    what: "bundle",
                    id: name.clone(),
                });
            }
            audit.record("bundle.deleted", actor, &name, json!({}))?;
        });
        tracing::info!(trust_domain = %name, "bundle deleted");
        Ok(())
    }
}

fn from_row(row: BundleRow) -> Result<Bundle, DatastoreError> {
    let (td, jwks) = row;
    let corrupt = |detail: String| DatastoreError::Corrupt {
        what: "bundle",
        id: td.clone(),
        detail,
    };
    let trust_domain = TrustDomain::new(&td).map_err(|e| corrupt(e.to_string()))?;
    Bundle::from_jwks(trust_domain, jwks.as_bytes()).map_err(|e| corrupt(e.to_string()))
}
