//! Makes a site's running parts from its configuration: the namespace handler (auth, client events, hooks,
//! device checks) over the recovery log, retained state and mailboxes. At start it makes every site; on a reload,
//! the sites that were added (a new namespace) and changed (a new handler over the same namespace and sockets).

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::{OnceCell, Semaphore};

use super::{
    keeps_mailboxes, presence_target, DeviceCheck, DeviceLocks, GatewayError, SiteHandler,
};
use crate::auth::Authenticator;
use crate::cluster::registry::NodeRecords;
use crate::cluster::Cluster;
use crate::config::{LimitsConfig, MailboxSettings, SiteConfig};
use crate::events::{Brokers, ClientEvents, EventLimits, SocketHooks};
use crate::mailbox::{Mailbox, MailboxStore, Presence};
use crate::metrics::{SiteMetrics, Webhook};
use crate::publish::Publisher;
use crate::recovery::SiteRecovery;
use crate::retained::{RetainCaps, RetainedStore, SiteRetained};
use crate::sites::Site;
use crate::socketio::{Namespace, NamespaceHandler, SocketIo};
use crate::tls::Trust;

/// What every site shares, and makes its own parts from.
pub(super) struct SiteFactory {
    pub http: reqwest::Client,
    /// The roots an https:// auth webhook's certificate is checked against.
    pub trust: Trust,
    pub retained: Arc<dyn RetainedStore>,
    pub mailbox: MailboxSlot,
    pub presence: Arc<Presence>,
    pub device_locks: Arc<DeviceLocks>,
    pub cluster: Arc<Cluster>,
    /// The publisher client events publish through, set once the sites exist.
    pub publisher: Arc<OnceLock<Publisher>>,
}

/// What a reload may change for every site at once: the links to brokers and the limits its handler applies.
#[derive(Clone)]
pub(super) struct Rules {
    pub brokers: Brokers,
    pub limits: LimitsConfig,
}

/// A site made but not yet serving: [`Made::serve`] puts it in place.
pub(super) struct Made {
    pub site: Site,
    handler: Arc<dyn NamespaceHandler>,
    /// Whether the namespace is new (an added site), rather than the running one of a changed site.
    new_namespace: bool,
}

impl Made {
    /// Serves the site: registers its new namespace, or gives the running one its new handler.
    pub fn serve(self, io: &SocketIo) -> Site {
        if self.new_namespace {
            io.insert_namespace(Arc::clone(&self.site.namespace));
        } else {
            self.site.namespace.set_handler(self.handler);
        }
        self.site
    }
}

/// The state a site keeps across reloads, or starts with.
struct Parts {
    mailbox: Option<Arc<Mailbox>>,
    recovery: Option<Arc<SiteRecovery>>,
    retained: Arc<SiteRetained>,
    metrics: Arc<SiteMetrics>,
}

impl Parts {
    fn into_site(self, config: &SiteConfig, namespace: Arc<Namespace>) -> Site {
        Site {
            config: config.clone(),
            namespace,
            mailbox: self.mailbox,
            recovery: self.recovery,
            retained: self.retained,
            metrics: self.metrics,
        }
    }
}

type OwnNamespace = Arc<OnceLock<Weak<Namespace>>>;

impl SiteFactory {
    /// `config`, as a new site with its own namespace. Its clients can connect once it is served.
    pub async fn create(&self, config: &SiteConfig, rules: &Rules) -> Result<Made, GatewayError> {
        let caps = RetainCaps {
            max_entries: rules.limits.max_retained,
            max_bytes: rules.limits.max_retained_bytes,
        };
        let retained = SiteRetained::open(&config.name, Arc::clone(&self.retained), caps).await?;
        let parts = Parts {
            mailbox: self.mailbox_for(config).await?,
            recovery: SiteRecovery::new(config, &self.cluster).map(Arc::new),
            retained: Arc::new(retained),
            metrics: Arc::new(SiteMetrics::new(&config.name)),
        };
        let own = OwnNamespace::default();
        let handler = self.handler(config, &parts, rules, Arc::clone(&own))?;
        let name = format!("/{}", config.name);
        let namespace = Arc::new(Namespace::new(&name, Arc::clone(&handler)));
        // Weak: the namespace owns its handler, so a strong link back would be a cycle.
        let _ = own.set(Arc::downgrade(&namespace));
        Ok(Made {
            site: parts.into_site(config, namespace),
            handler,
            new_namespace: true,
        })
    }

    /// `old` under its new configuration `config`: the same namespace, sockets, retained state and metrics,
    /// with a new handler. The recovery log stays unless the window changed.
    pub async fn update(
        &self,
        old: &Site,
        config: &SiteConfig,
        rules: &Rules,
    ) -> Result<Made, GatewayError> {
        let recovery = if old.config.recovery_window_ms == config.recovery_window_ms {
            old.recovery.clone()
        } else {
            SiteRecovery::new(config, &self.cluster).map(Arc::new)
        };
        let parts = Parts {
            mailbox: self.mailbox_for(config).await?,
            recovery,
            retained: Arc::clone(&old.retained),
            metrics: Arc::clone(&old.metrics),
        };
        let own = OwnNamespace::default();
        let _ = own.set(Arc::downgrade(&old.namespace));
        let handler = self.handler(config, &parts, rules, own)?;
        Ok(Made {
            site: parts.into_site(config, Arc::clone(&old.namespace)),
            handler,
            new_namespace: false,
        })
    }

    async fn mailbox_for(&self, config: &SiteConfig) -> Result<Option<Arc<Mailbox>>, GatewayError> {
        if !keeps_mailboxes(config) {
            return Ok(None);
        }
        self.mailbox.get().await.map(Some)
    }

    /// The handler that lets `site`'s clients in and takes their events.
    fn handler(
        &self,
        config: &SiteConfig,
        site: &Parts,
        rules: &Rules,
        own: OwnNamespace,
    ) -> Result<Arc<dyn NamespaceHandler>, GatewayError> {
        let auth = Authenticator::for_site(
            &config.auth,
            self.http.clone(),
            &self.trust,
            rules.limits.max_concurrent_auth,
        )
        .map_err(|source| GatewayError::Auth {
            site: config.name.clone(),
            source,
        })?;
        let shared = Arc::new(config.clone());
        let metrics = &site.metrics;
        Ok(Arc::new(SiteHandler {
            site: Arc::clone(&shared),
            auth,
            namespace: own,
            mailbox: site.mailbox.clone(),
            presence: presence_target(config).map(|t| (Arc::clone(&self.presence), t)),
            auth_slots: Arc::new(Semaphore::new(rules.limits.max_concurrent_auth)),
            devices: site.mailbox.clone().map(|mailbox| {
                Arc::new(DeviceCheck {
                    mailbox,
                    locks: Arc::clone(&self.device_locks),
                    max_devices: rules.limits.max_devices_per_user,
                    ttl: Duration::from_secs(config.device_ttl_secs),
                })
            }),
            recovery: site.recovery.clone(),
            retained: Arc::clone(&site.retained),
            events: Arc::new(ClientEvents::new(
                Arc::clone(&shared),
                self.http.clone(),
                Arc::clone(&self.publisher),
                EventLimits::from_config(&rules.limits),
                &rules.brokers,
                Arc::clone(metrics),
            )),
            hooks: SocketHooks::new(
                shared,
                self.http.clone(),
                metrics.webhook(Webhook::Hook).clone(),
            ),
            metrics: Arc::clone(metrics),
        }))
    }
}

/// The mailbox service, started for the first site that keeps mailboxes: at start, or by the reload that adds
/// one.
pub(super) struct MailboxSlot {
    started: OnceCell<Arc<Mailbox>>,
    store: Arc<dyn MailboxStore>,
    settings: MailboxSettings,
    /// Where a cluster node records the devices it holds, so a survivor releases them if it dies.
    records: Option<NodeRecords>,
}

impl MailboxSlot {
    pub fn new(
        store: Arc<dyn MailboxStore>,
        settings: MailboxSettings,
        records: Option<NodeRecords>,
    ) -> Self {
        MailboxSlot {
            started: OnceCell::new(),
            store,
            settings,
            records,
        }
    }

    /// The running service, started now if it was not.
    pub async fn get(&self) -> Result<Arc<Mailbox>, GatewayError> {
        let mailbox = self
            .started
            .get_or_try_init(|| async {
                let mailbox =
                    Mailbox::start(Arc::clone(&self.store), self.settings.clone()).await?;
                if let Some(records) = &self.records {
                    mailbox.record_devices(records.clone());
                }
                Ok::<_, GatewayError>(mailbox)
            })
            .await?;
        Ok(Arc::clone(mailbox))
    }
}
