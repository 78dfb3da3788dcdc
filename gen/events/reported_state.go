package events

type ReportedState struct {
	Seq              int             `json:"seq" binding:"required"`
	RunningReleaseId string          `json:"running_release_id,omitempty"`
	Services         []ServiceStatus `json:"services,omitempty"`
	OsVersion        string          `json:"os_version,omitempty"`
	AgentVersion     string          `json:"agent_version,omitempty"`
	IpAddresses      []string        `json:"ip_addresses,omitempty"`
}
