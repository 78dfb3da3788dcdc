package events

type BuildFinishedData struct {
	BuildId              string                 `json:"build_id" binding:"required"`
	FleetId              string                 `json:"fleet_id" binding:"required"`
	ReleaseId            string                 `json:"release_id" binding:"required"`
	Status               string                 `json:"status" binding:"required"`
	Error                string                 `json:"error,omitempty"`
	AdditionalProperties map[string]interface{} `json:"-,omitempty"`
}
