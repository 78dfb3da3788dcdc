package events

type ServiceStatus struct {
	Name             string        `json:"name" binding:"required"`
	Status           *ServiceState `json:"status" binding:"required"`
	DownloadProgress int           `json:"download_progress,omitempty"`
	UpdateLocked     bool          `json:"update_locked,omitempty"`
}
