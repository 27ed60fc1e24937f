//! The pages the binary serves (`http.webUi`): the chat page at `/`, the operator dashboard at
//! `/admin` and their assets under `/assets/`. They are built from `web/src` into `web/dist`
//! (`npm run --prefix web build`, output committed) and embedded here, so nothing is fetched at
//! run time. Assets get content-hashed names and are cached for a year; pages are revalidated
//! by ETag. `DIALOGUE_WEB_DIR` reads the files from a directory at start-up instead (for
//! working on the pages without rebuilding the binary).

use crate::config::AuthMode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// The built files, as committed in `web/dist`.
const EMBEDDED: &[(&str, &[u8])] = &[
    ("chat.html", include_bytes!("../../web/dist/chat.html")),
    ("admin.html", include_bytes!("../../web/dist/admin.html")),
    ("chat.js", include_bytes!("../../web/dist/chat.js")),
    ("chat.js.gz", include_bytes!("../../web/dist/chat.js.gz")),
    ("admin.js", include_bytes!("../../web/dist/admin.js")),
    ("admin.js.gz", include_bytes!("../../web/dist/admin.js.gz")),
    ("style.css", include_bytes!("../../web/dist/style.css")),
    (
        "style.css.gz",
        include_bytes!("../../web/dist/style.css.gz"),
    ),
];

/// Assets the pages link as `/assets/<name>`; each has a `<name>.gz` beside it.
const ASSETS: &[&str] = &["chat.js", "admin.js", "style.css"];

/// What the pages may load: this origin only (the socket included), no inline script.
const CSP: &str = "default-src 'self'; img-src 'self' data:; connect-src 'self'; \
                   frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// A page, ready to send.
struct Page {
    body: Bytes,
    etag: HeaderValue,
}

/// An asset under its hashed name.
struct Asset {
    body: Bytes,
    gzipped: Bytes,
    content_type: &'static str,
    etag: HeaderValue,
}

/// The pages and assets, with hashed asset names filled in.
pub struct WebUi {
    chat: Page,
    admin: Page,
    /// By hashed file name (`chat.1a2b3c4d5e.js`).
    assets: HashMap<String, Asset>,
}

/// The first 10 hex digits of the SHA-256 of `bytes`.
fn short_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)[..5]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn etag(hash: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{hash}\"")).expect("hex is a valid header value")
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        _ => "application/octet-stream",
    }
}

impl WebUi {
    /// The files built into the binary.
    pub fn embedded(auth: &AuthMode) -> WebUi {
        let files: HashMap<&str, Bytes> = EMBEDDED
            .iter()
            .map(|(name, bytes)| (*name, Bytes::from_static(bytes)))
            .collect();
        Self::build(files, auth).expect("the embedded files are complete")
    }

    /// The files of a `web/dist` directory (`DIALOGUE_WEB_DIR`).
    pub fn from_dir(dir: &Path, auth: &AuthMode) -> Result<WebUi, String> {
        let mut files = HashMap::new();
        for (name, _) in EMBEDDED {
            let path = dir.join(name);
            let bytes =
                std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            files.insert(*name, Bytes::from(bytes));
        }
        Self::build(files, auth)
    }

    fn build(files: HashMap<&str, Bytes>, auth: &AuthMode) -> Result<WebUi, String> {
        let file = |name: &str| {
            files
                .get(name)
                .cloned()
                .ok_or_else(|| format!("{name} is missing"))
        };
        let mut assets = HashMap::new();
        // `/assets/chat.js` in a page → `/assets/chat.<hash>.js`.
        let mut links = Vec::new();
        for name in ASSETS {
            let body = file(name)?;
            let hash = short_hash(&body);
            let (stem, ext) = name
                .rsplit_once('.')
                .expect("asset names have an extension");
            let hashed = format!("{stem}.{hash}.{ext}");
            links.push((format!("/assets/{name}"), format!("/assets/{hashed}")));
            assets.insert(
                hashed,
                Asset {
                    body,
                    gzipped: file(&format!("{name}.gz"))?,
                    content_type: content_type(name),
                    etag: etag(&hash),
                },
            );
        }
        let auth_mode = match auth {
            AuthMode::Open => "open",
            AuthMode::Jwt => "jwt",
        };
        let page = |name: &str| -> Result<Page, String> {
            let html = String::from_utf8(file(name)?.to_vec())
                .map_err(|_| format!("{name} is not UTF-8"))?;
            let mut html = html.replace("{{AUTH_MODE}}", auth_mode);
            for (plain, hashed) in &links {
                html = html.replace(&format!("\"{plain}\""), &format!("\"{hashed}\""));
            }
            Ok(Page {
                etag: etag(&short_hash(html.as_bytes())),
                body: Bytes::from(html),
            })
        };
        Ok(WebUi {
            chat: page("chat.html")?,
            admin: page("admin.html")?,
            assets,
        })
    }
}

/// Registers `/`, `/admin` and `/assets/{file}` (GET and HEAD).
pub fn configure(cfg: &mut web::ServiceConfig, ui: Arc<WebUi>) {
    let get = || {
        web::route()
            .guard(actix_web::guard::Any(actix_web::guard::Get()).or(actix_web::guard::Head()))
    };
    cfg.app_data(web::Data::from(ui))
        .route("/", get().to(chat))
        .route("/admin", get().to(admin))
        .route("/assets/{file}", get().to(asset));
}

/// True when the request's `If-None-Match` names `etag` (weak comparison, as RFC 9110 asks:
/// a proxy may have marked the tag `W/`).
fn not_modified(req: &HttpRequest, etag: &HeaderValue) -> bool {
    req.headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',').map(str::trim).any(|t| {
                t == "*" || t.strip_prefix("W/").unwrap_or(t).as_bytes() == etag.as_bytes()
            })
        })
}

/// The start of an answer with `etag`: 304 when the client holds it already (`true`: send no
/// body), else 200.
fn revalidated(req: &HttpRequest, etag: &HeaderValue) -> (HttpResponseBuilder, bool) {
    let held = not_modified(req, etag);
    let mut response = if held {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header((header::ETAG, etag.clone()))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
    (response, held)
}

fn page(req: &HttpRequest, page: &Page) -> HttpResponse {
    let (mut response, held) = revalidated(req, &page.etag);
    response
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::REFERRER_POLICY, "no-referrer"));
    if held {
        return response.finish();
    }
    response
        .content_type("text/html; charset=utf-8")
        .body(page.body.clone())
}

async fn chat(req: HttpRequest, ui: web::Data<WebUi>) -> HttpResponse {
    page(&req, &ui.chat)
}

async fn admin(req: HttpRequest, ui: web::Data<WebUi>) -> HttpResponse {
    page(&req, &ui.admin)
}

/// True when the client takes a gzip body.
fn takes_gzip(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',').any(|coding| {
                let mut parts = coding.split(';');
                let name = parts.next().unwrap_or("").trim();
                let refused = parts.any(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .and_then(|q| q.trim().parse::<f32>().ok())
                        == Some(0.0)
                });
                name.eq_ignore_ascii_case("gzip") && !refused
            })
        })
}

async fn asset(req: HttpRequest, file: web::Path<String>, ui: web::Data<WebUi>) -> HttpResponse {
    let Some(asset) = ui.assets.get(file.as_str()) else {
        return super::not_found(req).await;
    };
    let (mut response, held) = revalidated(&req, &asset.etag);
    response
        .insert_header((header::CACHE_CONTROL, "public, max-age=31536000, immutable"))
        .insert_header((header::VARY, "Accept-Encoding"));
    if held {
        return response.finish();
    }
    response.content_type(asset.content_type);
    if takes_gzip(&req) {
        response
            .insert_header((header::CONTENT_ENCODING, "gzip"))
            .body(asset.gzipped.clone())
    } else {
        response.body(asset.body.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn gzip_is_taken_unless_refused() {
        let with = |v: &str| {
            takes_gzip(
                &TestRequest::default()
                    .insert_header((header::ACCEPT_ENCODING, v))
                    .to_http_request(),
            )
        };
        assert!(with("gzip, deflate, br"));
        assert!(with("br;q=1.0, GZIP;q=0.5"));
        assert!(!with("gzip;q=0"));
        assert!(!with("br, deflate"));
        assert!(!takes_gzip(&TestRequest::default().to_http_request()));
    }

    #[test]
    fn pages_link_hashed_assets() {
        let ui = WebUi::embedded(&AuthMode::Jwt);
        for name in ASSETS {
            let (stem, ext) = name.rsplit_once('.').unwrap();
            let hashed = ui
                .assets
                .keys()
                .find(|k| k.starts_with(&format!("{stem}.")) && k.ends_with(&format!(".{ext}")))
                .expect("every asset is served under a hashed name");
            assert_eq!(hashed.len(), name.len() + 11, "{hashed}");
        }
        let chat = std::str::from_utf8(&ui.chat.body).unwrap();
        assert!(!chat.contains("{{AUTH_MODE}}"));
        assert!(
            !chat.contains("\"/assets/chat.js\""),
            "the page links the hashed name"
        );
    }
}
