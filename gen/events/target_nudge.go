package events

type TargetNudge struct {
	Version string `json:"version" binding:"required"`
}
